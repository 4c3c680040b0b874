from avae.cli import main

raise SystemExit(main())
