from carspotter.cli import main

main()
