from carmesh_cli.main import main

raise SystemExit(main())
