"""Code shared by test modules (models, images, apps and servers); no tests here. Shared
fixtures are in tests/conftest.py."""
