"""lowlight.kernels"""
