"""``python -m flipd`` is the ``flipd`` command (for launchers such as torchrun that run a module)."""

from .cli import main

if __name__ == "__main__":
    main()
