from latentsight.cli import main

main()
