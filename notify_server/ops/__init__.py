"""Running it: the command line, `dev` and its embedded services."""
