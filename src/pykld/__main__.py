from pykld.kld.cli import main

raise SystemExit(main())
