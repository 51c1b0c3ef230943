from clipkd.cli import main

raise SystemExit(main())
