"""arq workers of notify-server: the event pipeline."""
