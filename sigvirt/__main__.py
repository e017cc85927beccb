from sigvirt.cli import main

main()
