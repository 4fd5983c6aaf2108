from pyfs.cli.mkfs import main

raise SystemExit(main())
