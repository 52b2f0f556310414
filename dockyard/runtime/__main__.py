from dockyard.runtime.cli import main

raise SystemExit(main())
