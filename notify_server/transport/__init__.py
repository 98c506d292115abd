"""Getting frames to open tabs: frames, the connection map, presence, push streams and routing, the push
consumer, heartbeat, delivery repair."""
