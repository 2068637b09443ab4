"""``python -m reactorapp.passwd FILE USER``: manage the password file."""

from reactorapp.auth.passwd import main

if __name__ == "__main__":
    raise SystemExit(main())
