"""notify-server: real-time notifications for web applications."""
