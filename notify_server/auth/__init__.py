"""Who is asking: auth methods (session, JWT, connect proxy), API keys, origins, revocations, and the
session watch that closes sockets whose credential ended."""
