from trunkguard.cli import main

raise SystemExit(main())
