from avae.cli.commands import main

raise SystemExit(main())
