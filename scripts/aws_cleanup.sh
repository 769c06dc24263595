#!/usr/bin/env bash
# Terminate the training instance (default: the one in .last_instance) and keep the data volume.
# Spot instances bill until terminated; the EBS volume bills until you delete it yourself.
#
#   scripts/aws_cleanup.sh [INSTANCE_ID]
set -euo pipefail
INSTANCE_ID=${1:-$(cat .last_instance 2>/dev/null || true)}
[ -n "$INSTANCE_ID" ] || { echo "aws_cleanup: pass an instance id (no .last_instance here)" >&2; exit 1; }
aws_() { aws ${REGION:+--region "$REGION"} "$@"; }
aws_ ec2 terminate-instances --instance-ids "$INSTANCE_ID" >/dev/null
echo "terminating $INSTANCE_ID; waiting"
aws_ ec2 wait instance-terminated --instance-ids "$INSTANCE_ID"
rm -f .last_instance
echo "terminated $INSTANCE_ID. The data volume was detached and kept; list your volumes with:"
echo "  aws ec2 describe-volumes --filters Name=status,Values=available --query 'Volumes[].[VolumeId,Size,AvailabilityZone]'"
