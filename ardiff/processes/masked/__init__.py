"""Masked (absorbing-state) diffusion: the removal process between autoregression and Gaussian
diffusion. Pixels are replaced by a mask token independently, each with probability 1 - alpha(t)
at time t in [0, 1]; the bidirectional transformer predicts every masked pixel from the
unmasked ones (the same network as ARDM), and sampling unmasks many pixels per step."""
