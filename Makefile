.PHONY: setup demo test lint bench
setup:
	bash hardware/setup/install.sh
demo:
	bash hardware/setup/run.sh demo
test:
	bash hardware/setup/run.sh test
lint:
	bash hardware/setup/run.sh lint
bench: setup
	.venv/bin/python bench/crypto.py
	.venv/bin/python bench/timing.py
	.venv/bin/python bench/gas.py
	.venv/bin/python bench/l2.py
	.venv/bin/python bench/tamper.py
