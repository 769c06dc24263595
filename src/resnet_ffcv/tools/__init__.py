"""The commands beside ``fit``: ``plan`` (measured time and cost), ``doctor`` (preflight), ``evaluate``,
``export``, ``curves``, and the measuring pieces they share (``throughput``, ``disk_speed``)."""
