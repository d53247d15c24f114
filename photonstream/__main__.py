from photonstream.cli import main

main()
