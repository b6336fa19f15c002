"""Evaluation: accuracy of a model on a prepared split (`metrics`, counted by `scoring`), the plots of a model and
of its training (`plots`), and the size and compute of architectures (`profile`)."""
