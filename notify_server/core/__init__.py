"""What every wing shares and that knows none of them: settings, vocabulary (constants, identity, schemas,
templates), metrics, logs, what a store error means, and the supervisor of background loops."""
