"""How is a model trained, resumed, validated and finished? The parts train.py's visible loop calls."""
