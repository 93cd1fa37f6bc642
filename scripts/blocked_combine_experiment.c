/* Experiment behind docs/sim.md "Simulator overhead": would combining all nodes of a round together, one
 * cache-sized block of columns at a time, save memory traffic at 1,000 nodes?
 *
 *     gcc -O3 -o /tmp/blocked scripts/blocked_combine_experiment.c && /tmp/blocked 2048
 *
 * 1,000 nodes, d = 50,890 (the simulator's MLP), each node the trimmed mean (f = 1, the pairwise pass of
 * aggregation/_native.c) of its own row and 8 random other rows, nodes in a random order. (a) node by node
 * over all columns, as the simulator does; (b) for each block of columns, every node. Prints us per node.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 1000
#define D 50890
#define K 9
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2"))) static void tm1(const float *const *rows, int n, long from, long to, float *out){
  for (long j=from;j+8<=to;j+=8){
    __m256 a=_mm256_loadu_ps(rows[0]+j), b=_mm256_loadu_ps(rows[1]+j);
    __m256 hi=_mm256_max_ps(a,b), lo=_mm256_min_ps(b,a), mid=_mm256_setzero_ps();
    int i=2;
    for(;i+1<n;i+=2){ a=_mm256_loadu_ps(rows[i]+j); b=_mm256_loadu_ps(rows[i+1]+j);
      __m256 mx=_mm256_max_ps(a,b), mn=_mm256_min_ps(b,a);
      __m256 p1=_mm256_min_ps(hi,mx), p2=_mm256_max_ps(lo,mn);
      hi=_mm256_max_ps(mx,hi); lo=_mm256_min_ps(mn,lo); mid=_mm256_add_ps(mid,p1); mid=_mm256_add_ps(mid,p2);}
    if(i<n){ __m256 e=_mm256_loadu_ps(rows[i]+j); __m256 p=_mm256_min_ps(hi,e); hi=_mm256_max_ps(e,hi);
      __m256 q=_mm256_max_ps(lo,p); lo=_mm256_min_ps(p,lo); mid=_mm256_add_ps(mid,q);}
    _mm256_storeu_ps(out+j,_mm256_div_ps(mid,_mm256_set1_ps((float)(n-2))));
  }
}
int main(int argc,char**argv){
  long block=argc>1?atol(argv[1]):2048;
  float **model=malloc(N*sizeof(float*)), **out=malloc(N*sizeof(float*));
  for(int i=0;i<N;i++){model[i]=malloc(D*4+64); out[i]=malloc(D*4+64); for(long j=0;j<D;j++){model[i][j]=(float)rand()/RAND_MAX; out[i][j]=0;}}
  int nb[N][K]; srand(1);
  for(int i=0;i<N;i++){nb[i][0]=i; for(int k=1;k<K;k++) nb[i][k]=rand()%N;}
  int order[N]; for(int i=0;i<N;i++) order[i]=i; for(int i=N-1;i>0;i--){int r=rand()%(i+1);int t=order[i];order[i]=order[r];order[r]=t;}
  const float *rows[K];
  for(int rep=0;rep<3;rep++){
    double t=now();
    for(int ii=0;ii<N;ii++){int i=order[ii]; for(int k=0;k<K;k++) rows[k]=model[nb[i][k]]; tm1(rows,K,0,D,out[i]);}
    double a=now()-t;
    t=now();
    for(long s=0;s<D;s+=block){long e=s+block<D?s+block:D;
      for(int ii=0;ii<N;ii++){int i=order[ii]; for(int k=0;k<K;k++) rows[k]=model[nb[i][k]]; tm1(rows,K,s,e,out[i]);}}
    double b=now()-t;
    printf("block %ld: per-node %.1f us/node, blocked %.1f us/node\n",block,a/N*1e6,b/N*1e6);
  }
}
