"""The ML: data, model, training, evaluation, export and serving of CIFAR-10 CNNs; never imports optuna."""
