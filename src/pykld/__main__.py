from pykld.cli import main

raise SystemExit(main())
