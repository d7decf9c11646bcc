"""Something else in the repository; not part of the analysis project."""


def helper() -> int:
    return 1
