set -u
cd /tmp/review-e/w/k
gen(){ python3 -c "
import random; r=random.Random($1)
for k,n in (('a',400),('b',300)):
  us=sorted(r.sample(range(600),n)); open(f'snaps/{k}.csv','w').write('user_id\n'+''.join('u%04d\n'%i for i in us))"; }
gen 0; ../../audience-sync --config cfgC.toml sync >/dev/null 2>&1; echo init rc=$?
cur=C; tgt=D
for i in $(seq 1 14); do
  gen $i
  d=$(python3 -c "import random;print(round(random.uniform(0,6),2))")
  ../../audience-sync --config cfg$tgt.toml resync > r.out 2> r.err & p=$!
  sleep $d; kill -9 $p 2>/dev/null; wait $p 2>/dev/null
  rec=$(sqlite3 state.db "select identity from state_destination")
  echo "iter $i delay $d marked: $(grep -c marked r.out) recorded: $rec"
  if echo "$rec" | grep -q 1800${tgt/C/3}; then :; fi
  case "$rec" in *18003*) now=C;; *18004*) now=D;; esac
  if [ $now = $tgt ]; then
    ../../audience-sync --config cfg$tgt.toml sync > s.out 2> s.err; echo "  sync $tgt rc=$? $(tail -c 300 s.err | tail -1)"
    python3 view.py $tgt.log | tail -3
    cur=$tgt; tgt=$([ $tgt = C ] && echo D || echo C)
  else
    ../../audience-sync --config cfg$tgt.toml sync >/dev/null 2> s.err; echo "  sync $tgt (not moved) rc=$? $(cut -c1-90 s.err)"
    ../../audience-sync --config cfg$cur.toml sync >/dev/null 2>&1; echo "  sync $cur rc=$?"
  fi
done
