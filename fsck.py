from pyfs.cli.fsck import main

raise SystemExit(main())
