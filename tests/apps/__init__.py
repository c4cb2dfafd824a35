"""Third-party peers for the tests: real apps and clients nobody here wrote (Socket.IO on
Node), pinned by their own lock files and installed by tests/apps/npm-install.sh."""
