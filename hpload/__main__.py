from hpload.cli import main

raise SystemExit(main())
