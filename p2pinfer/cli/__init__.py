"""The `p2pinfer` command: one verb per module (node, cluster, infer, status, demo, bench, zoo)."""
