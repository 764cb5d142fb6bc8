import sys, time
sys.path.insert(0, "/work/main")
from agent import urequests
P = int(open("/tmp/shimx/bl.port").read())
t = time.ticks_ms()
try:
    urequests.get("http://127.0.0.1:%d/" % P, timeout=0.5)
except OSError as e:
    print(repr(e), e.errno, time.ticks_diff(time.ticks_ms(), t))
try:
    urequests.get("https://127.0.0.1:%d/" % P, timeout=0.5, ca_file="/nonexistent.pem")
except OSError as e:
    print(repr(e))
try:
    urequests.get("https://localhost:%d/" % P, timeout=0.5, ca_file="/tmp/shimx/ca.pem")
except OSError as e:
    print(repr(e))
