"""Test and benchmark helpers: writers of realistic input files (XTC2 runs). Not imported by the library."""
