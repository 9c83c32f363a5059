"""einc.compiler"""
