#!/usr/bin/env bash
# Launch a spot p4d.24xlarge next to the EBS volume that holds the .ffcv files, and attach the volume.
# Checks first: the volume exists and is free, the subnet (if given) is in the volume's availability zone, and
# the current spot price is under your ceiling. Writes the instance id to .last_instance for aws_cleanup.sh.
#
#   VOLUME_ID=vol-... AMI_ID=ami-... KEY_NAME=... SECURITY_GROUP=sg-... scripts/aws_spot_launch.sh
#
# Optional: INSTANCE_TYPE (p4d.24xlarge), MAX_PRICE ($/hour ceiling, 15), SUBNET_ID, REGION (AWS CLI default).
set -euo pipefail
INSTANCE_TYPE=${INSTANCE_TYPE:-p4d.24xlarge}
MAX_PRICE=${MAX_PRICE:-15}
fail() { echo "aws_spot_launch: $*" >&2; exit 1; }
for var in VOLUME_ID AMI_ID KEY_NAME SECURITY_GROUP; do
  [ -n "${!var:-}" ] || fail "set $var (see the header of $0)"
done
command -v aws >/dev/null || fail "the aws CLI is not installed (pip install awscli, then aws configure)"
aws_() { aws ${REGION:+--region "$REGION"} "$@"; }

read -r AZ STATE < <(aws_ ec2 describe-volumes --volume-ids "$VOLUME_ID" \
  --query 'Volumes[0].[AvailabilityZone,State]' --output text) || fail "volume $VOLUME_ID not found"
[ "$STATE" = available ] || fail "volume $VOLUME_ID is '$STATE', not 'available' (attached to another instance?)"
echo "volume $VOLUME_ID: $AZ, $STATE"

if [ -n "${SUBNET_ID:-}" ]; then
  SUBNET_AZ=$(aws_ ec2 describe-subnets --subnet-ids "$SUBNET_ID" --query 'Subnets[0].AvailabilityZone' --output text)
  [ "$SUBNET_AZ" = "$AZ" ] || fail "subnet $SUBNET_ID is in $SUBNET_AZ but the volume is in $AZ: EBS attaches only within one zone"
fi

PRICE=$(aws_ ec2 describe-spot-price-history --instance-types "$INSTANCE_TYPE" --availability-zone "$AZ" \
  --product-descriptions Linux/UNIX --max-items 1 --query 'SpotPriceHistory[0].SpotPrice' --output text)
awk -v p="$PRICE" 'BEGIN {exit !(p + 0 > 0)}' || fail "no spot price for $INSTANCE_TYPE in $AZ (not offered there?)"
awk -v p="$PRICE" -v m="$MAX_PRICE" 'BEGIN {exit !(p + 0 <= m + 0)}' \
  || fail "spot price \$$PRICE/h for $INSTANCE_TYPE in $AZ is above MAX_PRICE=\$$MAX_PRICE/h"
echo "spot price: \$$PRICE/h in $AZ (ceiling \$$MAX_PRICE/h)"

INSTANCE_ID=$(aws_ ec2 run-instances --image-id "$AMI_ID" --instance-type "$INSTANCE_TYPE" --key-name "$KEY_NAME" \
  --security-group-ids "$SECURITY_GROUP" ${SUBNET_ID:+--subnet-id "$SUBNET_ID"} --placement "AvailabilityZone=$AZ" \
  --instance-market-options "MarketType=spot,SpotOptions={MaxPrice=$MAX_PRICE,SpotInstanceType=one-time,InstanceInterruptionBehavior=terminate}" \
  --query 'Instances[0].InstanceId' --output text)
echo "$INSTANCE_ID" > .last_instance
echo "instance $INSTANCE_ID requested; waiting until it runs"
aws_ ec2 wait instance-running --instance-ids "$INSTANCE_ID"
aws_ ec2 attach-volume --volume-id "$VOLUME_ID" --instance-id "$INSTANCE_ID" --device /dev/sdf >/dev/null
HOST=$(aws_ ec2 describe-instances --instance-ids "$INSTANCE_ID" \
  --query 'Reservations[0].Instances[0].PublicDnsName' --output text)
cat <<NEXT
instance $INSTANCE_ID running at $HOST with $VOLUME_ID attached
next:
  ssh ubuntu@$HOST
  sudo scripts/ebs_training.sh && scripts/tmux_training_setup.sh
when done:  scripts/aws_cleanup.sh          # terminates the instance, keeps the data volume
NEXT
