"""lowlight.calibration"""
