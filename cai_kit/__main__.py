from cai_kit.cli.main import main

main()
