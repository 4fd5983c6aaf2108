from pyfs.fsck_cli import main

raise SystemExit(main())
