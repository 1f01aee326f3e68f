"""Stage two: heads, LightGBM, the one fit path, calibration, cv, tuning."""
