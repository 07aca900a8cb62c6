"""The conditioning itself: the torch-free micro-condition record (original size, crop, target
size), SDXL's time ids and their Fourier embedding, and the classifier-free guidance formula."""
