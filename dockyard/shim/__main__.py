"""``python -m dockyard.shim``: the same as ``containerd-shim-dockyard-v2``."""

from dockyard.shim.main import main

raise SystemExit(main())
