from augdefense.cli import main

raise SystemExit(main())
