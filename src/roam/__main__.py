from roam.cli import main

# The same name as the installed command: usage lines and shell completion
# (_ROAM_COMPLETE) read it.
main(prog_name="roam")
