from notify_server.cli import main

raise SystemExit(main())
