from augdefense.gpucheck.cli import main

raise SystemExit(main())
