from pyfs.mkfs_cli import main

raise SystemExit(main())
