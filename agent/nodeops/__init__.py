"""Node operations: drain, stop/start, scaling, health, monitor, the control API, /self/cmd,
node preparation. Each takes a narrow view of the node, never the whole Agent."""
