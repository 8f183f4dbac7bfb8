from augdefense.bench.cli import main

raise SystemExit(main())
