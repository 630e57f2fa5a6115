# Python engine targets (virtual environment, protocol code, engine tests).
# Included by the top-level Makefile.

.PHONY: venv test-py lint-py proto

venv:
	@true

test-py:
	@true

lint-py:
	@true

proto:
	@true
