from benchmarks.adaptive.run import main

raise SystemExit(main())
